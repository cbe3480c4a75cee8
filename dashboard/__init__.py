"""Operations dashboard: one admin page for queues, workers, failures and latency."""
