"""The HTTP edge: a FastAPI app serving health, metrics and (PS3.18) DICOMweb."""
