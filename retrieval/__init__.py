"""Candidate retrieval (FAISS index build and search) and batch rerank jobs (upcoming)."""
