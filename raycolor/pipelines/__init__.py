"""The Ray side: planning, the colorize pipeline (stages, dataset wiring, driver), evaluate and training.
Nothing outside this package and the surface (cli, demo, jobs/) imports Ray."""
