"""The Dagster code location (``dagster dev -m jrr_pipeline.definitions``)."""

from jrr_pipeline.resources.home import configure_environment

configure_environment()

from jrr_pipeline.dagster_compat import quiet_dagster_previews  # noqa: E402

quiet_dagster_previews()  # before the assets are defined: some warn as they are decorated

from jrr_pipeline.pipeline import build_definitions  # noqa: E402

defs = build_definitions()
