"""Pipeline stages. Each module registers one stage with `facepipe.pipeline.runner.register_stage`."""
