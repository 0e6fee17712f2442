"""Read-side queries: listings, searches, dashboards, statistics and metrics."""
