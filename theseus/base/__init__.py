"""Mesh axis names, topology and run folders: what is shared by models and trainers."""
