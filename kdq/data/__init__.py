"""Arena rows: load, validate, swap and encode them (:mod:`kdq.data.arena`), and synthetic probe
rows (:mod:`kdq.data.probe`). Names load on first use: ``kdq.data.probe`` needs no ``datasets``."""

from ..utils.lazy import lazy_package

__all__ = [
    "load_arena",
    "swap_ab",
    "encode",
    "labels_of",
    "scheme_of_rows",
    "core_columns",
    "TEXT_COLUMNS",
    "REQUIRED",
    "make_arena_rows",
    "make_wsdm_rows",
]

lazy_package(
    __name__,
    {
        "load_arena": ".arena",
        "swap_ab": ".arena",
        "encode": ".arena",
        "labels_of": ".arena",
        "scheme_of_rows": ".arena",
        "core_columns": ".arena",
        "TEXT_COLUMNS": ".arena",
        "REQUIRED": ".arena",
        "make_arena_rows": ".probe",
        "make_wsdm_rows": ".probe",
    },
)
