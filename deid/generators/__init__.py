"""Generators: networks that make a face's new pixels in one forward pass (imported only
where a mode that uses them is enabled)."""
