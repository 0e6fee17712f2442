"""The whole product: pipelines of real worker processes, the benchmarks, and what ships
(the wheel, ``docker-compose.yml``, ``ops/``), each across every layer."""
