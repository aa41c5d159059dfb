"""Portcullis package."""
