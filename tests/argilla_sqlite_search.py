"""TEST INFRASTRUCTURE, not part of Distillery: an argilla-server search engine that reads SQLite.

argilla-server 2.8 needs Elasticsearch or OpenSearch for search, progress and metadata metrics, and
neither can be installed on the test machine. This plugin registers itself under the name `sqlite`
(select it with `ARGILLA_SEARCH_ENGINE=sqlite`) and answers those calls from the server's own
database: it loads a dataset's records with their responses and suggestions and filters, sorts and
pages them in Python. The index hooks do nothing because the database already is the index.

It runs inside argilla-server's own virtualenv (imported by `argilla_server_main.py`), so it may use
argilla-server's modules; nothing in `synth/` imports it.

What it does not reproduce from Elasticsearch: relevance scoring (text queries are case-insensitive
substring matches, every hit scores 1.0), query-string syntax, vector similarity search (it returns
nothing), the per-user random order for annotators (records come in insertion order), and speed on
large datasets (every search reads the whole dataset).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

from argilla_server.database import AsyncSessionLocal
from argilla_server.enums import MetadataPropertyType, ResponseStatusFilter, SortOrder
from argilla_server.models import Dataset, MetadataProperty, Record, Response, Suggestion, User
from argilla_server.search_engine.base import (
    AndFilter,
    FloatMetadataMetrics,
    IntegerMetadataMetrics,
    MetadataFilterScope,
    RangeFilter,
    RecordFilterScope,
    ResponseFilterScope,
    SearchEngine,
    SearchResponseItem,
    SearchResponses,
    SuggestionFilterScope,
    TermsFilter,
    TermsMetrics,
    TextQuery,
)
from sqlalchemy import select
from sqlalchemy.orm import selectinload


async def _records(dataset_id: Any) -> list[Record]:
    async with AsyncSessionLocal() as db:
        rows = await db.execute(
            select(Record)
            .where(Record.dataset_id == dataset_id)
            .options(
                selectinload(Record.responses),
                selectinload(Record.suggestions).selectinload(Suggestion.question),
            )
            .order_by(Record.inserted_at, Record.id)
        )
        return list(rows.scalars().all())


def _user_responses(record: Record, user: User | None) -> list[Response]:
    return [r for r in record.responses if user is None or r.user_id == user.id]


def _values(record: Record, scope: Any) -> list[Any]:
    """Every value the scope addresses in one record (a record matches when any of them does)."""
    if isinstance(scope, MetadataFilterScope):
        value = (record.metadata_ or {}).get(scope.metadata_property)
        return [] if value is None else (value if isinstance(value, list) else [value])
    if isinstance(scope, RecordFilterScope):
        return [getattr(record, scope.property, None)]
    if isinstance(scope, SuggestionFilterScope):
        return [getattr(s, scope.property) for s in record.suggestions if s.question.name == scope.question]
    if isinstance(scope, ResponseFilterScope):
        responses = _user_responses(record, scope.user)
        if scope.question is None:  # the response's own property, e.g. status
            values = [getattr(r, scope.property or "status") for r in responses]
            return values or [ResponseStatusFilter.pending]
        return [(r.values or {}).get(scope.question, {}).get("value") for r in responses]
    raise ValueError(f"scope {scope!r} is not supported by the sqlite test search engine")


def _as_str(value: Any) -> Any:
    """Enum members (statuses) compare and sort by their value."""
    return value if isinstance(value, str) else getattr(value, "value", value)


def _matches(record: Record, flt: Any) -> bool:
    if isinstance(flt, AndFilter):
        return all(_matches(record, f) for f in flt.filters)
    values = _values(record, flt.scope)
    if isinstance(flt, TermsFilter):
        wanted = {str(v) for v in flt.values}
        flat: list[Any] = []
        for v in values:
            flat.extend(v if isinstance(v, list) else [v])
        return any(str(_as_str(v)) in wanted for v in flat)
    if isinstance(flt, RangeFilter):
        return any(
            isinstance(v, (int, float)) and (flt.ge is None or v >= flt.ge) and (flt.le is None or v <= flt.le)
            for v in values
        )
    raise ValueError(f"filter {flt!r} is not supported by the sqlite test search engine")


def _text_matches(record: Record, query: TextQuery | str | None) -> bool:
    if query is None:
        return True
    q = query if isinstance(query, str) else query.q
    field = None if isinstance(query, str) else query.field
    if not q or q == "*":
        return True
    fields = record.fields or {}
    texts = [fields.get(field)] if field else list(fields.values())
    return any(q.lower() in str(t).lower() for t in texts if t is not None)


def _sort_key(record: Record, scope: Any) -> tuple[int, Any]:
    values = [v for v in _values(record, scope) if v is not None]
    if not values:
        return (1, "")  # missing values last, as Elasticsearch does
    v = _as_str(values[0])
    return (0, v)


def _status_counts(statuses: Iterable[Any]) -> dict[str, int]:
    return dict(Counter(str(_as_str(s)) for s in statuses))


@SearchEngine.register(engine_name="sqlite")
class SQLiteSearchEngine(SearchEngine):
    """Search, progress and metrics answered from argilla-server's SQL database (tests only)."""

    @classmethod
    async def new_instance(cls) -> SQLiteSearchEngine:
        return cls()

    async def close(self) -> None:
        return None

    async def ping(self) -> bool:
        return True

    async def info(self) -> dict:
        return {"engine": "sqlite", "note": "Distillery test plugin"}

    # The database is the index: nothing to create, update or delete.
    async def create_index(self, dataset: Dataset) -> None:
        return None

    async def delete_index(self, dataset: Dataset) -> None:
        return None

    async def configure_metadata_property(self, dataset: Dataset, metadata_property: MetadataProperty) -> None:
        return None

    async def index_records(self, dataset: Dataset, records: Iterable[Record]) -> None:
        return None

    async def partial_record_update(self, record: Record, **update: Any) -> None:
        return None

    async def delete_records(self, dataset: Dataset, records: Iterable[Record]) -> None:
        return None

    async def update_record_response(self, response: Response) -> None:
        return None

    async def delete_record_response(self, response: Response) -> None:
        return None

    async def update_record_suggestion(self, suggestion: Suggestion) -> None:
        return None

    async def delete_record_suggestion(self, suggestion: Suggestion) -> None:
        return None

    async def configure_index_vectors(self, vector_settings: Any) -> None:
        return None

    async def get_dataset_progress(self, dataset: Dataset) -> dict:
        if dataset.is_draft:
            return {}
        records = await _records(dataset.id)
        return {"total": len(records), **_status_counts(r.status for r in records)}

    async def get_dataset_user_progress(self, dataset: Dataset, user: User) -> dict:
        if dataset.is_draft:
            return {}
        statuses = [r.status for rec in await _records(dataset.id) for r in rec.responses if r.user_id == user.id]
        return {"total": len(statuses), **_status_counts(statuses)}

    async def search(
        self,
        dataset: Dataset,
        query: TextQuery | str | None = None,
        filter: Any = None,
        sort: list[Any] | None = None,
        offset: int = 0,
        limit: int = 100,
        user_id: Any = None,
    ) -> SearchResponses:
        hits = [
            r for r in await _records(dataset.id) if _text_matches(r, query) and (filter is None or _matches(r, filter))
        ]
        for order in reversed(sort or []):  # stable sorts, last key first
            hits.sort(key=lambda r, o=order: _sort_key(r, o.scope), reverse=order.order == SortOrder.desc)
        page = hits[offset : offset + limit]
        return SearchResponses(items=[SearchResponseItem(record_id=r.id, score=1.0) for r in page], total=len(hits))

    async def similarity_search(self, *args: Any, **kwargs: Any) -> SearchResponses:
        return SearchResponses(items=[], total=0)

    async def compute_metrics_for(self, metadata_property: MetadataProperty) -> Any:
        values = [(r.metadata_ or {}).get(metadata_property.name) for r in await _records(metadata_property.dataset_id)]
        values = [v for v in values if v is not None]
        if metadata_property.type == MetadataPropertyType.terms:
            flat = [x for v in values for x in (v if isinstance(v, list) else [v])]
            counts = Counter(str(x) for x in flat)
            return TermsMetrics(
                total=len(counts), values=[TermsMetrics.TermCount(term=t, count=c) for t, c in counts.most_common()]
            )
        cls = IntegerMetadataMetrics if metadata_property.type == MetadataPropertyType.integer else FloatMetadataMetrics
        return cls(min=min(values), max=max(values)) if values else cls()
