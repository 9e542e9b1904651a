"""The one place that wires protocol parts into CrypTen's extension points.

CrypTen looks triple providers up by name in ``crypten.mpc``'s provider table through
``cfg.mpc.provider``; parts register their provider objects here.
"""

from __future__ import annotations

from typing import Any

_PROVIDER_TABLE = "__SUPPORTED_PROVIDERS"


def provider_table(crypten: Any) -> dict[str, Any]:
    return vars(crypten.mpc)[_PROVIDER_TABLE]


def use_provider(crypten: Any, name: str, provider: Any) -> None:
    """Register ``provider`` under ``name`` and make it the one CrypTen uses."""
    provider_table(crypten)[name] = provider
    crypten.cfg.mpc.provider = name


def drop_provider(crypten: Any, name: str, fallback: str = "TFP") -> None:
    provider_table(crypten).pop(name, None)
    if crypten.cfg.mpc.provider == name:
        crypten.cfg.mpc.provider = fallback
