"""Which versions are loaded, and hot reload when aliases move.

Every server worker has one manager. It loads every version an alias points at, keeps versions
asked for by number in a bounded LRU, and polls the store's cheap ``change_token`` to follow alias
moves without a restart. A new version is loaded *before* the alias map is swapped, and the maps
are replaced whole (never mutated), so requests never see a half-updated state and none fail
during a switch. A version that fails to load makes only its own model unavailable.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections import OrderedDict

from medserve.core.artifacts import ArtifactStore
from medserve.core.errors import (
    AliasNotFoundError,
    MedserveError,
    ModelUnavailableError,
)
from medserve.core.loaded_model import LoadedModel, load_version, operating_point_in
from medserve.core.registry.signature import Signature
from medserve.core.store.base import RegistryStore
from medserve.core.store.traffic import TrafficPolicy, TrafficStore
from medserve.serving.traffic import AliasRoute, ShadowLog, build_route

log = logging.getLogger(__name__)

Key = tuple[str, int]


class ModelManager:
    def __init__(
        self,
        store: RegistryStore,
        artifacts: ArtifactStore,
        *,
        max_explicit: int = 16,
        intra_op_threads: int = 1,
    ) -> None:
        self.store = store
        self.artifacts = artifacts
        self.max_explicit = max_explicit
        self.intra_op_threads = intra_op_threads
        self._aliases: dict[tuple[str, str], int] = {}
        # Canary and shadow traffic (serving/traffic.py): aliases with a split are left out of
        # ``_direct``, the hot-path map, so that only their requests pay for the choice.
        self._direct: dict[tuple[str, str], int] = {}
        self.routes: dict[tuple[str, str], AliasRoute] = {}
        self.shadowing = False  # whether any route has a shadow (one check per request)
        self.shadow_log: ShadowLog | None = None
        self._pinned: set[Key] = set()
        self._loaded: dict[Key, LoadedModel] = {}
        self._failed: dict[Key, str] = {}
        self._explicit: OrderedDict[Key, None] = OrderedDict()
        self._token: str | None = None
        self._sync_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.synced_once = False

    # -- lifecycle ------------------------------------------------------------------------
    def start(self, poll_interval_s: float) -> None:
        self.sync()
        if poll_interval_s > 0:
            self._thread = threading.Thread(
                target=self._poll, args=(poll_interval_s,), name="medserve-reload", daemon=True
            )
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self.shadow_log is not None:
            self.shadow_log.stop()

    def _poll(self, interval: float) -> None:
        while not self._stop.wait(interval):
            try:
                self.sync()
            except Exception:  # keep serving what is loaded; try again next tick
                log.exception("registry poll failed")

    # -- reload ---------------------------------------------------------------------------
    def sync(self, *, force: bool = False) -> bool:
        """Follow the registry; returns True when something changed."""
        with self._sync_lock:
            token = self.store.change_token()
            if token == self._token and not force:
                return False
            aliases = {(m, a): v for m, a, v in self.store.all_aliases()}
            policies = self._policies()
            wanted = {(m, v) for (m, _), v in aliases.items()}
            for policy in policies.values():
                wanted |= {(policy.model, r.version) for r in policy.canaries + policy.shadows}
            loaded = dict(self._loaded)
            failed = {k: msg for k, msg in self._failed.items() if k in wanted}
            for key in wanted:
                if key in loaded:
                    loaded[key] = self._refreshed(loaded[key])
                    continue
                try:
                    version = self.store.get_version(*key)
                    loaded[key] = load_version(
                        self.artifacts,
                        version,
                        intra_op_threads=self.intra_op_threads,
                        operating_point=operating_point_in(self.store, version),
                    )
                    failed.pop(key, None)
                except MedserveError as exc:
                    failed[key] = exc.message
                    log.error("%s", exc.message)
            keep = wanted | set(self._explicit)
            self._loaded = {k: m for k, m in loaded.items() if k in keep}
            self._failed = failed
            routes = self._routes(policies, self._loaded)
            shadowing = any(r.models[0].shadows for r in routes.values())
            if shadowing and self.shadow_log is None:
                self.shadow_log = ShadowLog(TrafficStore(self.store))
            self._pinned = wanted
            self.routes = routes
            self.shadowing = shadowing
            self._direct = {k: v for k, v in aliases.items() if k not in routes}
            self._aliases = aliases  # swapped after the new versions are loaded
            self._token = token
            self.synced_once = True
            return True

    def _policies(self) -> dict[tuple[str, str], TrafficPolicy]:
        """The aliases with a canary or shadow (none on a store without the SQL tables)."""
        try:
            return TrafficStore(self.store).all_policies()
        except MedserveError as exc:  # e.g. a non-SQL store: every alias serves one version
            log.debug("no traffic policies: %s", exc.message)
            return {}

    @staticmethod
    def _routes(
        policies: dict[tuple[str, str], TrafficPolicy], loaded: dict[Key, LoadedModel]
    ) -> dict[tuple[str, str], AliasRoute]:
        """A route per split alias, over the versions that loaded (a canary that failed to load
        gives its share back to the alias's own version; a shadow that failed is left out)."""
        routes = {}
        for key, policy in policies.items():
            primary = loaded.get((policy.model, policy.primary))
            if primary is None:
                continue
            weights: list[tuple[LoadedModel, int]] = []
            for route in policy.canaries:
                canary = loaded.get((policy.model, route.version))
                if canary is not None:
                    weights.append((canary, route.weight))
            weights.append((primary, 100 - sum(w for _, w in weights)))
            # buckets are laid out by version number, not primary first: ramping a canary up
            # (even past 50%, where it becomes the primary) only adds buckets to it, so a
            # patient it answered stays on it
            weights.sort(key=lambda pair: pair[0].number)
            shadows = tuple(
                m for r in policy.shadows if (m := loaded.get((policy.model, r.version)))
            )
            routes[key] = build_route(policy.model, policy.alias, weights, shadows)
        return routes

    def _refreshed(self, model: LoadedModel) -> LoadedModel:
        """The same runtime with the version's current editable fields (signature, serving
        config, tags): an edit takes effect without reloading the artifact."""
        try:
            current = self.store.get_version(model.name, model.number)
        except MedserveError:
            return model
        if current == model.version:
            return model
        signature = Signature.model_validate(current.signature)
        point = operating_point_in(self.store, current)  # a threshold set in the config
        return dataclasses.replace(
            model, version=current, signature=signature, operating_point=point
        )

    # -- lookup ---------------------------------------------------------------------------
    def cached(self, name: str, ref: str) -> LoadedModel | None:
        """The hot-path lookup: no I/O. ``None`` means ask :meth:`get`."""
        if ref.isdigit():
            key = (name, int(ref))
        else:
            number = self._direct.get((name, ref))
            if number is None:
                return None
            key = (name, number)
        return self._loaded.get(key)

    def get(self, name: str, ref: str) -> LoadedModel:
        """Resolve and, if needed, load. May touch the store and disk: call off the event loop."""
        model = self.cached(name, ref)
        if model is not None:
            if ref.isdigit():
                self._touch((name, int(ref)))
            return model
        if ref.isdigit():
            return self._load_explicit(name, int(ref))
        self.sync()  # an alias set a moment ago: do not wait for the next poll
        number = self._aliases.get((name, ref))
        if number is None:
            self.store.get_model(name)  # raises ModelNotFoundError
            raise AliasNotFoundError(
                f"model {name!r} has no {ref!r} alias, so it is not served under that name"
                + (
                    "; ask for a version explicitly or approve one as production"
                    if ref == "production"
                    else ""
                )
            )
        key = (name, number)
        if key in self._failed:
            raise ModelUnavailableError(self._failed[key])
        model = self._loaded.get(key)
        if model is None:
            raise ModelUnavailableError(f"model {name!r} version {number} is not loaded yet")
        return model

    def _load_explicit(self, name: str, number: int) -> LoadedModel:
        key = (name, number)
        version = self.store.get_version(name, number)  # raises Model/VersionNotFoundError
        with self._sync_lock:
            model = self._loaded.get(key)
            if model is None:
                model = load_version(
                    self.artifacts,
                    version,
                    intra_op_threads=self.intra_op_threads,
                    operating_point=operating_point_in(self.store, version),
                )
                self._loaded = {**self._loaded, key: model}
            self._explicit[key] = None
            self._explicit.move_to_end(key)
            aliased = {(m, v) for (m, _), v in self._aliases.items()} | self._pinned
            while len(self._explicit) > self.max_explicit:
                old, _ = self._explicit.popitem(last=False)
                if old not in aliased:
                    self._loaded = {k: m for k, m in self._loaded.items() if k != old}
        return model

    def _touch(self, key: Key) -> None:
        if key in self._explicit:
            self._explicit.move_to_end(key)

    # -- introspection --------------------------------------------------------------------
    def aliases_of(self, name: str, number: int) -> list[str]:
        return sorted(a for (m, a), v in self._aliases.items() if m == name and v == number)

    def served(self) -> list[tuple[str, str, int]]:
        return sorted((m, a, v) for (m, a), v in self._aliases.items())

    def failures(self) -> dict[Key, str]:
        return dict(self._failed)

    def is_ready(self, name: str, number: int) -> bool:
        return (name, number) in self._loaded
