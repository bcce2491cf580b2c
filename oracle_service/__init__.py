"""ComPO oracle service: a FastAPI pairwise-comparison service and its client.

Importing this package (or `oracle_service.client` / `oracle_service.schemas`) does not
import FastAPI; the server lives in `oracle_service.main`.
"""

__version__ = "0.1.0"
