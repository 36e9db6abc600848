"""``jrr lineage``: walk a registered model back to the data files that made it.

registered model version -> MLflow training run (params, metrics, Dagster tags, dataset input)
-> the Dagster materialization of each input it read (negatives, candidate lists, tables), found by
the data version the run recorded, and recursively their inputs -> the ``dataset_files``
observation whose metadata lists every file with its sha256.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC

INPUT_TAG = "dagster.input_data_version."
SHOWN_PARAMS = ("base_model", "epochs", "max_steps", "batch_size", "lr", "n_negatives", "method")


@dataclass
class Node:
    """One step of the chain: what it is, a one-line summary, details, and where it came from."""

    kind: str
    title: str
    details: dict[str, str] = field(default_factory=dict)
    parents: list[Node] = field(default_factory=list)

    def render(self, indent: int = 0) -> list[str]:
        pad = "  " * indent
        lines = [f"{pad}{'<- ' if indent else ''}[{self.kind}] {self.title}"]
        lines += [f"{pad}     {k}: {v}" for k, v in self.details.items()]
        for parent in self.parents:
            lines += parent.render(indent + 1)
        return lines


def parse_spec(spec: str) -> tuple[str, str | None]:
    name, _, version = spec.partition(":")
    if not name:
        raise ValueError(f"{spec!r}: expected MODEL_NAME or MODEL_NAME:VERSION")
    return name, version or None


def model_lineage(spec: str, tracking_uri: str, instance=None) -> Node:
    """The lineage tree of ``NAME[:VERSION]`` (latest version when none is given)."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient(tracking_uri=tracking_uri)
    name, version = parse_spec(spec)
    try:
        versions = client.search_model_versions(f"name = '{name}'")
    except MlflowException as err:
        raise ValueError(f"model {name!r}: {err}") from err
    if not versions:
        known = sorted(m.name for m in client.search_registered_models())
        raise ValueError(f"no registered model {name!r}; registered: {', '.join(known) or 'none'}")
    if version is None:
        chosen = max(versions, key=lambda v: int(v.version))
    else:
        matching = [v for v in versions if str(v.version) == version]
        if not matching:
            have = ", ".join(sorted((str(v.version) for v in versions), key=int))
            raise ValueError(f"model {name!r} has no version {version}; versions: {have}")
        chosen = matching[0]

    model = Node("registered model", f"{name} version {chosen.version}", {
        "source": chosen.source, "created": _ms(chosen.creation_timestamp),
        **{k: v for k, v in sorted(chosen.tags.items()) if k.startswith("dagster.run_id")},
    })
    run = client.get_run(chosen.run_id)
    params = {k: run.data.params[k] for k in SHOWN_PARAMS if k in run.data.params}
    metrics = {k: f"{v:.4g}" for k, v in sorted(run.data.metrics.items())
               if k in ("final_loss", "wall_s", "examples_per_s")}
    training = Node("MLflow run", f"{run.info.run_name} ({run.info.run_id}, {run.info.status})", {
        "dagster run": run.data.tags.get("dagster.run_id", "?"),
        "asset": run.data.tags.get("dagster.asset_key", "?"),
        "code version": ", ".join(v for k, v in run.data.tags.items()
                                  if k.startswith("dagster.code_version.")) or "?",
        **({"params": ", ".join(f"{k}={v}" for k, v in params.items())} if params else {}),
        **({"metrics": ", ".join(f"{k}={v}" for k, v in metrics.items())} if metrics else {}),
    })
    model.parents.append(training)
    for dataset_input in run.inputs.dataset_inputs:
        ds = dataset_input.dataset
        files = {t.key.removeprefix("file:"): t.value for t in dataset_input.tags
                 if t.key.startswith("file:")}
        training.parents.append(Node("MLflow dataset", f"{ds.name} digest {ds.digest}", {
            "source": ds.source, **{f"file {k}": f"sha256 {v}..." for k, v in files.items()},
        }))
    inputs = {k.removeprefix(INPUT_TAG): v for k, v in sorted(run.data.tags.items())
              if k.startswith(INPUT_TAG)}
    if instance is not None:
        seen: dict[tuple[str, str], Node] = {}
        for key, data_version in inputs.items():
            training.parents.append(_asset_node(instance, key, data_version, seen))
    else:
        for key, data_version in inputs.items():
            training.parents.append(Node("asset", f"{key} data version {data_version}"))
    return model


def _asset_node(instance, key: str, data_version: str, seen: dict, depth: int = 0) -> Node:
    """The materialization (or observation) of ``key`` that had ``data_version``, with its inputs."""
    from dagster import AssetKey

    from jrr_pipeline.dagster_compat import (
        INPUT_DATA_VERSION_TAG_PREFIX,
        extract_data_version_from_entry,
    )

    if (key, data_version) in seen:
        return Node("asset", f"{key} data version {data_version} (shown above)")
    asset_key = AssetKey.from_user_string(key)
    record = None
    for fetch in (instance.fetch_materializations, instance.fetch_observations):
        for candidate in fetch(asset_key, limit=200).records:
            version = extract_data_version_from_entry(candidate.event_log_entry)
            if version is not None and version.value == data_version:
                record = candidate
                break
        if record is not None:
            break
    if record is None:
        return Node("asset", f"{key} data version {data_version} (not in this Dagster instance)")
    entry = record.event_log_entry
    event = entry.asset_materialization or entry.asset_observation
    details = {"dagster run": entry.run_id, "at": _ms(entry.timestamp * 1000)}
    metadata = event.metadata if event is not None else {}
    for name in ("dagster/row_count", "directory", "files"):
        if name in metadata:
            value = metadata[name].value
            if isinstance(value, dict):
                details.update({f"file {k}": f"sha256 {str(v)[:16]}..." for k, v in value.items()})
            else:
                details[name.removeprefix("dagster/")] = str(value)
    node = Node("observation" if entry.asset_observation else "materialization",
                f"{key} data version {data_version}", details)
    seen[(key, data_version)] = node
    tags = event.tags if event is not None else {}
    prefix = INPUT_DATA_VERSION_TAG_PREFIX + "/"
    for tag, value in sorted((tags or {}).items()):
        if tag.startswith(prefix) and depth < 8:
            node.parents.append(_asset_node(instance, tag.removeprefix(prefix), value, seen,
                                            depth + 1))
    return node


def _ms(timestamp_ms: float | int | None) -> str:
    from datetime import datetime

    if not timestamp_ms:
        return "?"
    return datetime.fromtimestamp(timestamp_ms / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
