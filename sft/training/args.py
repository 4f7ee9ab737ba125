"""`train.args` as TRL may take it: checked against the types of TRL's config fields, credentials removed.

TRL's configs are dataclasses that check few types themselves, so a wrong value would fail deep
inside the optimizer, and a token would be pickled into every checkpoint's training_args.bin.
Every problem here is a UserError naming `train.args.KEY`, raised before any data or model loads.
"""

from __future__ import annotations

from typing import Any

from synth.errors import UserError, first_line
from synth.recipe import Recipe
from synth.redact import is_secret_key


def _without_secrets(args: dict[str, Any], where: str = "train.args") -> tuple[dict[str, Any], list[str]]:
    """`args` less every credential-named key (hub_token, ...) at any depth, and the dotted names dropped."""
    kept: dict[str, Any] = {}
    dropped: list[str] = []
    for key, value in args.items():
        if is_secret_key(key):
            dropped.append(f"{where}.{key}")
            continue
        if isinstance(value, dict):
            value, inner = _without_secrets(value, f"{where}.{key}")
            dropped += inner
        kept[key] = value
    return kept, dropped


def user_args(recipe: Recipe) -> tuple[dict[str, Any], list[str]]:
    """`train.args` as TRL may see it: credentials dropped (Distillery never pushes from inside the trainer;
    `sft publish` does, with $HF_TOKEN), so that no checkpoint's training_args.bin holds one."""
    args, dropped = _without_secrets(dict(recipe.train.args))
    if dropped and args.get("push_to_hub"):
        raise UserError(
            f"train.args.push_to_hub with {', '.join(dropped)}: Distillery does not push from inside the "
            "trainer, which would save the token in every checkpoint",
            "remove them from train.args and run `sft publish` after training; it pushes final/ with $HF_TOKEN "
            "or `hf auth login`",
        )
    return args, dropped


def _type_name(hint: Any) -> str:
    """A field's annotation as a user reads it: `float`, `int or null`, `a list of str`."""
    import types
    import typing

    origin, inner = typing.get_origin(hint), typing.get_args(hint)
    if hint is type(None):
        return "null"
    if origin in (typing.Union, types.UnionType):
        return " or ".join(dict.fromkeys(_type_name(a) for a in inner))
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in inner)
    if origin in (list, tuple, set):
        return f"a list of {_type_name(inner[0])}" if inner else "a list"
    if origin is dict or hint is dict:
        return "a mapping"
    return getattr(hint, "__name__", str(hint).replace("typing.", ""))


def _checked_value(cls: Any, hint: Any, key: str, value: Any) -> Any:
    """`value` if it fits the type of TRL's field `key` (a numeric string becomes the number); else a UserError.

    TRL's configs are dataclasses that check few types themselves: `weight_decay: abc` would pass the
    config and fail deep inside the optimizer, or be pickled as is.
    """
    from pydantic import ConfigDict, TypeAdapter, ValidationError

    try:
        adapter = TypeAdapter(hint, config=ConfigDict(arbitrary_types_allowed=True))
    except Exception:  # an annotation pydantic cannot read: leave the value to TRL
        return value
    try:
        checked = adapter.validate_python(value)
    except ValidationError:
        raise UserError(
            f"train.args.{key}={value!r} has the wrong type: TRL's {cls.__name__} expects {_type_name(hint)}",
            f"give train.args.{key} a value of that type, e.g. in the recipe or as train.args.{key}=VALUE",
        ) from None
    return checked if isinstance(value, str) and not isinstance(checked, str) else value


def config(cls: Any, args: dict[str, Any], user: dict[str, Any] | None = None) -> Any:
    """TRL's config from our defaults plus `train.args` (`user`, also in `args`): an unknown key, a wrongly
    typed value or a value TRL refuses is a user error naming `train.args.KEY`, not a traceback."""
    import dataclasses
    import typing

    user = args if user is None else user
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(user) - known)
    if unknown:
        raise UserError(
            f"train.args: {', '.join(unknown)} not a field of TRL's {cls.__name__}",
            f"see `help(trl.{cls.__name__})` for the fields it takes",
        )
    try:
        hints = typing.get_type_hints(cls)
    except Exception:  # unreadable annotations: TRL's own checks below still run
        hints = {}
    args = dict(args)
    for key in user:
        if key in hints:
            args[key] = _checked_value(cls, hints[key], key, args[key])
    try:
        return cls(**args)
    except (TypeError, ValueError, OverflowError, ImportError) as exc:
        culprit = _culprit(cls, args, user)
        if culprit is None:
            raise UserError(
                f"train.args: TRL's {cls.__name__} refused the settings: {first_line(exc)}",
                f"check train.args ({', '.join(sorted(user)) or 'none set'})",
            ) from None
        raise UserError(
            f"train.args.{culprit}={args[culprit]!r}: TRL's {cls.__name__} refused it: {first_line(exc)}",
            f"change or remove train.args.{culprit}",
        ) from None


def _culprit(cls: Any, args: dict[str, Any], user: dict[str, Any]) -> str | None:
    """The `train.args` key that alone makes TRL's config refuse our defaults, if one does."""
    base = {k: v for k, v in args.items() if k not in user}
    for key in user:
        try:
            cls(**base, **{key: args[key]})
        except (TypeError, ValueError, OverflowError, ImportError):
            return key
    return None
