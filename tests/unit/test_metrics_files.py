"""The multiprocess /metrics scrape while an API process is creating its metrics file."""

from __future__ import annotations

import struct

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.mmap_dict import MmapedDict, mmap_key
from prometheus_client.multiprocess import MultiProcessCollector

from api.metrics import ProcessFilesCollector


@pytest.fixture
def metrics_dir(tmp_path):
    written = MmapedDict(str(tmp_path / "counter_101.db"))  # a process that served requests
    key = mmap_key("genq_api_requests_total", "genq_api_requests_total", ["status"], ["202"], "")
    written.write_value(key, 7.0, 0.0)
    written.close()
    (tmp_path / "counter_102.db").write_bytes(b"")  # one opening its file this instant
    return tmp_path


def test_a_file_being_created_is_skipped_not_a_failed_scrape(metrics_dir):
    registry = CollectorRegistry()
    ProcessFilesCollector(registry, path=str(metrics_dir))
    assert 'genq_api_requests_total{status="202"} 7.0' in generate_latest(registry).decode()


def test_the_stock_collector_fails_on_it(metrics_dir):
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(metrics_dir))
    with pytest.raises(struct.error):  # why genq's collector exists
        generate_latest(registry)
