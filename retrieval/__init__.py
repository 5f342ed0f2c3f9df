"""Candidate retrieval: FAISS index folders (`index.py`), the ``index build`` and ``index search``
commands (`build.py`, `search.py`) and the batch rerank job with its exactly-once shards."""
