"""MuseLab entry points (train, sample) and the glue between data, models and loggers."""
