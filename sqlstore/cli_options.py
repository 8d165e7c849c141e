"""Typer options shared by the modules of the `sqlstore` command line."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from sqlstore.layout import ROOT_ENVIRONMENT_VARIABLE

RootOption = Annotated[
    Path | None,
    typer.Option(
        "--root",
        help=f"Store root folder; default ${ROOT_ENVIRONMENT_VARIABLE}, else ./feature_store",
        show_default=False,
    ),
]
