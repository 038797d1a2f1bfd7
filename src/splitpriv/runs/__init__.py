"""Runs on top of the roles: one run end to end for every task (:mod:`.run`, configured by :mod:`.config`), the
centralized reference (:mod:`.centralized`), provenance of records, and the export of a run's wire."""
