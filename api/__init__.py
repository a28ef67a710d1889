"""The REST API (FastAPI on uvicorn): the dashboard's `db` functions, behind API tokens."""
