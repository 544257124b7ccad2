"""Arena rows: load, validate, swap and encode them (:mod:`kdq.data.arena`), group them and split them
without leaks (:mod:`kdq.data.groups`), convert chosen/rejected preference pairs to them
(:mod:`kdq.data.preferences`), and synthetic probe rows (:mod:`kdq.data.probe`). Names load on first use:
``kdq.data.probe`` needs no ``datasets``."""

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
    "normalise_text",
    "row_keys",
    "group_ids",
    "instruction_prompts",
    "grouped_split",
    "GroupKeys",
    "group_keys",
    "write_group_keys",
    "read_group_keys",
    "check_overlap",
    "recorded_group_keys",
    "carry_group_keys",
    "OverlapReport",
    "LeakWarning",
    "load_preference_pairs",
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
        "normalise_text": ".groups",
        "row_keys": ".groups",
        "group_ids": ".groups",
        "instruction_prompts": ".groups",
        "grouped_split": ".groups",
        "GroupKeys": ".groups",
        "group_keys": ".groups",
        "write_group_keys": ".groups",
        "read_group_keys": ".groups",
        "check_overlap": ".groups",
        "recorded_group_keys": ".groups",
        "carry_group_keys": ".groups",
        "OverlapReport": ".groups",
        "LeakWarning": ".groups",
        "load_preference_pairs": ".preferences",
    },
)
