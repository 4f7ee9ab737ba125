"""TEST INFRASTRUCTURE: a minimal Hugging Face Hub API server, in memory, for publishing tests.

No writable local Hub exists on PyPI, so the publish tests point `HF_ENDPOINT` at this FastAPI app
(served by uvicorn on 127.0.0.1, run as `python tests/hub_server.py PORT TOKEN USER`). It implements
only what huggingface_hub 2.x and datasets 5.x call to create a repo, upload (plain LFS batch API,
so clients run with HF_HUB_DISABLE_XET=1), commit, list, and download: whoami-v2, repos/create,
validate-yaml, repo info (+ revision), preupload, commit (NDJSON), tree, paths-info, resolve
(GET/HEAD with X-Repo-Commit, ETag, X-Linked-Size, ranges) and LFS batch + PUT.

It does not reproduce: Xet storage, branches other than `main`, pull requests, tags, refs listing,
gated repos, rate limits, organisations' permissions (any namespace is writable with the token),
YAML validation (every card is accepted), the dataset viewer / parquet conversion, or the real
server's exact error bodies (it sends the `X-Error-Code` headers clients branch on). A private repo
answers 401 `RepoNotFound` to anyone without the token, as the Hub does.
"""

from __future__ import annotations

import base64
import hashlib
import json
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse

LFS_EXTENSIONS = (".parquet", ".safetensors", ".bin", ".arrow", ".pt", ".gguf")


@dataclass
class Repo:
    repo_id: str
    repo_type: str
    private: bool
    files: dict[str, bytes] = field(default_factory=dict)  # path -> content
    lfs: set[str] = field(default_factory=set)  # paths stored as LFS
    sha: str = "0" * 40
    commits: list[dict[str, Any]] = field(default_factory=list)


def git_blob_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def make_app(token: str, user: str) -> FastAPI:
    app = FastAPI()
    repos: dict[tuple[str, str], Repo] = {}
    lfs_store: dict[str, bytes] = {}
    requests_log: list[dict[str, Any]] = []

    def error(status: int, code: str, message: str) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status, headers={"X-Error-Code": code})

    def authed(request: Request) -> bool:
        return request.headers.get("authorization", "") == f"Bearer {token}"

    def get_repo(request: Request, repo_type: str, repo_id: str) -> Repo | JSONResponse:
        repo = repos.get((repo_type, repo_id))
        if repo is None or (repo.private and not authed(request)):
            return error(401 if not authed(request) else 404, "RepoNotFound", "Repository not found")
        return repo

    def info(repo: Repo) -> dict[str, Any]:
        return {
            "id": repo.repo_id,
            "_id": repo.repo_id,
            "sha": repo.sha,
            "private": repo.private,
            "author": repo.repo_id.split("/")[0],
            "lastModified": "2026-01-01T00:00:00.000Z",
            "siblings": [{"rfilename": p} for p in sorted(repo.files)],
            "tags": [],
            "disabled": False,
            "gated": False,
            "downloads": 0,
            "likes": 0,
        }

    def entry(repo: Repo, path: str) -> dict[str, Any]:
        data = repo.files[path]
        e: dict[str, Any] = {"type": "file", "path": path, "size": len(data), "oid": git_blob_oid(data)}
        if path in repo.lfs:
            e["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 130}
        return e

    def folders(repo: Repo) -> set[str]:
        out = set()
        for p in repo.files:
            parts = p.split("/")[:-1]
            out |= {"/".join(parts[: i + 1]) for i in range(len(parts))}
        return out

    @app.middleware("http")
    async def log_requests(request: Request, call_next: Any) -> Any:
        response = await call_next(request)
        requests_log.append({"method": request.method, "path": request.url.path, "status": response.status_code})
        return response

    @app.get("/_test/log")
    async def get_log() -> Any:
        return requests_log

    @app.get("/api/whoami-v2")
    async def whoami(request: Request) -> Any:
        if not authed(request):
            return error(401, "Unauthorized", "Invalid credentials in Authorization header")
        return {
            "type": "user",
            "name": user,
            "fullname": user,
            "orgs": [],
            "auth": {"type": "access_token", "accessToken": {"displayName": "test", "role": "write"}},
        }

    @app.post("/api/repos/create")
    async def create(request: Request) -> Any:
        if not authed(request):
            return error(401, "Unauthorized", "Invalid credentials in Authorization header")
        body = await request.json()
        if body["name"].startswith("forbidden"):  # as the Hub answers a token without write access there
            return error(403, "Forbidden", "You don't have the rights to create a repo under this namespace")
        if body["name"].startswith("broken"):
            return error(500, "Internal Error", "Something went wrong on our side")
        repo_type = body.get("type") or "model"
        repo_id = f"{body.get('organization') or user}/{body['name']}"
        url = f"{request.base_url}{'' if repo_type == 'model' else repo_type + 's/'}{repo_id}"
        if (repo_type, repo_id) in repos:
            return JSONResponse({"error": "You already created this repo", "url": url}, status_code=409)
        private = body.get("private") or body.get("visibility") == "private"
        repos[(repo_type, repo_id)] = Repo(repo_id, repo_type, bool(private))
        return {"url": url, "name": repo_id, "id": repo_id}

    @app.post("/api/validate-yaml")
    async def validate_yaml() -> Any:
        return {"errors": [], "warnings": []}

    @app.get("/api/{kind}/{namespace}/{name}")
    @app.get("/api/{kind}/{namespace}/{name}/revision/{revision:path}")
    async def repo_info(request: Request, kind: str, namespace: str, name: str, revision: str = "main") -> Any:
        repo = get_repo(request, kind.rstrip("s"), f"{namespace}/{name}")
        return repo if isinstance(repo, JSONResponse) else info(repo)

    @app.post("/api/{kind}/{namespace}/{name}/preupload/{revision}")
    async def preupload(request: Request, kind: str, namespace: str, name: str, revision: str) -> Any:
        repo = get_repo(request, kind.rstrip("s"), f"{namespace}/{name}")
        if isinstance(repo, JSONResponse):
            return repo
        body = await request.json()
        files = []
        for f in body["files"]:
            sample = base64.b64decode(f.get("sample", ""))
            binary = b"\0" in sample or f["path"].endswith(LFS_EXTENSIONS)
            files.append({"path": f["path"], "uploadMode": "lfs" if binary else "regular", "shouldIgnore": False})
        return {"files": files, "commitOid": repo.sha}

    @app.post("/{prefix:path}.git/info/lfs/objects/batch")
    async def lfs_batch(request: Request, prefix: str) -> Any:
        if not authed(request):
            return error(401, "Unauthorized", "Invalid credentials")
        body = await request.json()
        objects = []
        for o in body["objects"]:
            obj: dict[str, Any] = {"oid": o["oid"], "size": o["size"], "authenticated": True}
            if o["oid"] not in lfs_store:
                obj["actions"] = {"upload": {"href": f"{request.base_url}_lfs/{o['oid']}", "header": {}}}
            objects.append(obj)
        return JSONResponse({"transfer": "basic", "objects": objects}, media_type="application/vnd.git-lfs+json")

    @app.put("/_lfs/{oid}")
    async def lfs_put(request: Request, oid: str) -> Any:
        data = await request.body()
        if hashlib.sha256(data).hexdigest() != oid:
            return error(400, "BadRequest", "sha256 mismatch")
        lfs_store[oid] = data
        return Response(status_code=200)

    @app.post("/api/{kind}/{namespace}/{name}/commit/{revision}")
    async def commit(request: Request, kind: str, namespace: str, name: str, revision: str) -> Any:
        if not authed(request):
            return error(401, "Unauthorized", "Invalid credentials")
        repo = get_repo(request, kind.rstrip("s"), f"{namespace}/{name}")
        if isinstance(repo, JSONResponse):
            return repo
        lines = [json.loads(line) for line in (await request.body()).decode().splitlines() if line.strip()]
        files, lfs, deleted = dict(repo.files), set(repo.lfs), []
        summary = ""
        for line in lines:
            key, value = line["key"], line["value"]
            if key == "header":
                summary = value.get("summary", "")
            elif key == "file":
                files[value["path"]] = base64.b64decode(value["content"])
                lfs.discard(value["path"])
            elif key == "lfsFile":
                if value["oid"] not in lfs_store:
                    return error(422, "LfsObjectMissing", f"LFS object {value['oid']} was never uploaded")
                files[value["path"]] = lfs_store[value["oid"]]
                lfs.add(value["path"])
            elif key == "deletedFile":
                files.pop(value["path"], None)
                deleted.append(value["path"])
            elif key == "deletedFolder":
                for p in [p for p in files if p.startswith(value["path"].rstrip("/") + "/")]:
                    files.pop(p)
            else:
                return error(400, "BadRequest", f"commit operation {key!r} is not supported by the test hub")
        repo.files, repo.lfs = files, lfs & set(files)
        repo.sha = hashlib.sha1(f"{repo.sha}{summary}{time.time_ns()}".encode()).hexdigest()
        repo.commits.append({"oid": repo.sha, "summary": summary})
        prefix = "" if repo.repo_type == "model" else f"{repo.repo_type}s/"
        return {
            "success": True,
            "commitOid": repo.sha,
            "commitUrl": f"{request.base_url}{prefix}{repo.repo_id}/commit/{repo.sha}",
            "pullRequestUrl": None,
        }

    @app.get("/api/{kind}/{namespace}/{name}/tree/{revision}")
    @app.get("/api/{kind}/{namespace}/{name}/tree/{revision}/{path:path}")
    async def tree(request: Request, kind: str, namespace: str, name: str, revision: str, path: str = "") -> Any:
        repo = get_repo(request, kind.rstrip("s"), f"{namespace}/{name}")
        if isinstance(repo, JSONResponse):
            return repo
        path = path.strip("/")
        recursive = request.query_params.get("recursive", "false").lower() in ("1", "true")
        if path and path not in folders(repo):
            return error(404, "EntryNotFound", f"{path} does not exist on main")
        base = f"{path}/" if path else ""
        out = []
        for d in sorted(folders(repo)):
            if d.startswith(base) and (recursive or "/" not in d[len(base) :]):
                out.append({"type": "directory", "path": d, "oid": "0" * 40, "size": 0})
        for p in sorted(repo.files):
            if p.startswith(base) and (recursive or "/" not in p[len(base) :]):
                out.append(entry(repo, p))
        return out

    @app.post("/api/{kind}/{namespace}/{name}/paths-info/{revision}")
    async def paths_info(request: Request, kind: str, namespace: str, name: str, revision: str) -> Any:
        repo = get_repo(request, kind.rstrip("s"), f"{namespace}/{name}")
        if isinstance(repo, JSONResponse):
            return repo
        form = await request.form()
        paths = form.getlist("paths")
        out = []
        for p in paths:
            p = p.strip("/")
            if p in repo.files:
                out.append(entry(repo, p))
            elif p in folders(repo):
                out.append({"type": "directory", "path": p, "oid": "0" * 40, "size": 0})
        return out

    @app.api_route("/{kind}/{namespace}/{name}/resolve/{revision}/{path:path}", methods=["GET", "HEAD"])
    @app.api_route("/{namespace}/{name}/resolve/{revision}/{path:path}", methods=["GET", "HEAD"])
    async def resolve(
        request: Request, namespace: str, name: str, revision: str, path: str, kind: str = "models"
    ) -> Any:
        repo_type = kind.rstrip("s") if kind in ("datasets", "spaces") else "model"
        if kind not in ("models", "datasets", "spaces"):  # a model repo named like `kind/namespace`
            return error(404, "RepoNotFound", "Repository not found")
        repo = get_repo(request, repo_type, f"{namespace}/{name}")
        if isinstance(repo, JSONResponse):
            return repo
        if path not in repo.files:
            return error(404, "EntryNotFound", f"{path} does not exist on {revision}")
        data = repo.files[path]
        etag = hashlib.sha256(data).hexdigest() if path in repo.lfs else git_blob_oid(data)
        headers = {"X-Repo-Commit": repo.sha, "ETag": f'"{etag}"', "Accept-Ranges": "bytes"}
        if path in repo.lfs:
            headers |= {"X-Linked-Etag": f'"{etag}"', "X-Linked-Size": str(len(data))}
        status = 200
        rng = request.headers.get("range")
        if rng and rng.startswith("bytes="):
            start_s, _, end_s = rng[6:].partition("-")
            start = int(start_s) if start_s else max(len(data) - int(end_s), 0)
            end = int(end_s) if start_s and end_s else len(data) - 1
            end = min(end, len(data) - 1)
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
            data, status = data[start : end + 1], 206
        headers["Content-Length"] = str(len(data))
        if request.method == "HEAD":
            return Response(status_code=status, headers=headers)
        return Response(content=data, status_code=status, headers=headers, media_type="application/octet-stream")

    @app.api_route("/{rest:path}", methods=["GET", "POST", "PUT", "HEAD", "DELETE"])
    async def unknown(rest: str) -> Any:
        return error(501, "NotImplemented", f"/{rest} is not implemented by the test hub")

    return app


if __name__ == "__main__":
    import uvicorn

    port, token, user = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    uvicorn.run(make_app(token, user), host="127.0.0.1", port=port, log_level="warning")
