"""Candidate retrieval: FAISS index folders (`index.py`); batch rerank jobs come next."""
