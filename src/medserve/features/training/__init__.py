"""Training pipelines: spec -> data -> preprocessing -> CV -> fit -> evaluate -> register."""
