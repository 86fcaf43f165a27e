"""What drives the views, with no widgets: job model, settings, workers, engine children."""
