"""Datasets: sources (demo, imagefolder, webdataset, coco) -> webdataset tar shards -> loaders."""
