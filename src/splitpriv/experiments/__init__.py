"""Experiments that reproduce the SAP paper's findings and search the utility–privacy frontier: a config-driven
grid (:mod:`.grid`) and its aggregation into plots and a report (:mod:`.report`)."""
