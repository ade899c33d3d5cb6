"""The benchmark harness's pure parts: wrk's summary line, medians, added latency, ratios, the README.

The harness itself (nginx, wrk, the gateways) is run by hand, never in CI.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from sobench import report, upstream, wrk

WRK_STDOUT = """Running 3s test @ http://127.0.0.1:40001/v1/chat/completions
  1 threads and 16 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     5.01ms    1.20ms  30.10ms   90.00%
  9000 requests in 3.00s, 6.20MB read
Requests/sec:   3000.00
WRKJSON {"requests":9000,"duration_us":3000000,"bytes":6500000,\
"errors":{"connect":0,"read":1,"write":0,"status":2,"timeout":0},\
"latency_us":{"p50":4800,"p90":6100,"p99":12500,"mean":5010.5,"max":30100}}
"""


def run(rps: float, p50: float, p99: float, errors: int = 0) -> wrk.WrkResult:
    return wrk.WrkResult(
        requests=int(rps * 10),
        duration_s=10.0,
        p50_ms=p50,
        p90_ms=p50,
        p99_ms=p99,
        mean_ms=p50,
        max_ms=p99,
        errors={"status": errors},
    )


def point(
    system: str, workload: str, c: int, rps: float, *, p50: float = 1.0, p99: float = 2.0
) -> report.Point:
    return report.summarize(system, workload, c, [run(rps, p50, p99)])


def test_the_wrkjson_line_becomes_a_result_in_milliseconds() -> None:
    result = wrk.parse_wrk_output(WRK_STDOUT)

    assert result.requests == 9000
    assert result.rps == pytest.approx(3000.0)
    assert (result.p50_ms, result.p90_ms, result.p99_ms, result.max_ms) == (4.8, 6.1, 12.5, 30.1)
    assert result.mean_ms == pytest.approx(5.0105)
    assert result.error_count == 3


def test_output_without_the_summary_line_is_an_error() -> None:
    with pytest.raises(ValueError, match="WRKJSON"):
        wrk.parse_wrk_output("unable to connect to 127.0.0.1:1 Connection refused\n")


def test_the_lua_script_prints_what_the_parser_reads() -> None:
    assert "WRKJSON {" in wrk.LUA_SCRIPT
    for key in ("requests", "duration_us", "errors", "latency_us", "p50", "p99"):
        assert f'"{key}"' in wrk.LUA_SCRIPT


def test_repeats_are_summarized_by_their_median_and_spread() -> None:
    p = report.summarize(
        "floor", "json", 16, [run(3000, 5, 9), run(2000, 7, 20, 1), run(2800, 6, 11)], cpu_s=[3.0, 3.0, 2.8]
    )

    assert (p.rps, p.p50_ms, p.p99_ms) == (2800, 6, 11)
    assert p.errors == 1 and p.repeats == 3 and p.requests == 78000
    assert p.spread == pytest.approx(1000 / 2800)
    assert p.cpu_ms == pytest.approx(0.1)  # median of 0.1, 0.15 and 0.1 ms per request


def test_added_latency_is_against_direct_at_the_same_point() -> None:
    points = [
        point("direct", "json", 1, 9000, p50=0.1, p99=0.3),
        point("direct", "json", 16, 40000, p50=0.4, p99=1.0),
        point("floor", "json", 1, 2000, p50=0.5, p99=1.3),
        point("floor", "sse", 1, 1500, p50=0.9, p99=2.0),
    ]

    added = report.added_latency(points)

    assert added[("floor", "json", 1)] == pytest.approx((0.4, 1.0))
    assert ("floor", "sse", 1) not in added  # no direct point to compare with
    assert ("direct", "json", 1) not in added


def test_ratios_divide_req_per_s_and_are_none_where_a_side_is_missing() -> None:
    points = [
        point("superollama", "json", 16, 2400),
        point("floor", "json", 16, 3000),
        point("litellm", "json", 16, 60),
        point("superollama", "sse", 64, 1000),
    ]

    assert report.ratio(points, "superollama", "floor", "json", 16) == pytest.approx(0.8)
    assert report.ratio(points, "superollama", "litellm", "json", 16) == pytest.approx(40.0)
    assert report.ratio(points, "superollama", "floor", "sse", 64) is None
    rows = report.ratio_rows(points, ["superollama"], ["litellm", "floor"])
    assert [(num, den) for num, den, _ in rows] == [("superollama", "litellm"), ("superollama", "floor")]
    assert rows[1][2] == [pytest.approx(0.8), None, None, None]


def test_the_cpu_ratio_is_requests_per_cpu_second() -> None:
    ours = report.summarize("superollama", "json", 16, [run(2000, 1, 2)], cpu_s=[10.0])  # 0.5 ms/req
    floor = report.summarize("floor", "json", 16, [run(3000, 1, 2)], cpu_s=[12.0])  # 0.4 ms/req

    assert report.ratio([ours, floor], "superollama", "floor", "json", 16, by="cpu") == pytest.approx(0.8)
    no_cpu = point("floor", "json", 16, 3000)
    assert report.ratio([ours, no_cpu], "superollama", "floor", "json", 16, by="cpu") is None


def test_the_markdown_has_every_point_the_system_table_and_the_ratios() -> None:
    points = [
        point("direct", "json", 16, 40000, p50=0.4, p99=1.0),
        point("superollama", "json", 16, 2500, p50=6.0, p99=9.0),
    ]
    data = {
        "date": "2026-01-01 00:00 UTC",
        "machine": {"nproc": 2, "cpu_model": "AMD EPYC", "python": "3.11.7", "revision": "abc"},
        "mode": "quick",
        "pinning": "gateway on CPU 0",
        "systems": [
            {"name": "direct", "label": "direct (nginx)", "start_s": 0.01, "rss_idle_mb": 5.0},
            {"name": "superollama", "label": "Super Ollama", "start_s": 0.8, "rss_idle_mb": 60.0},
            {"name": "litellm", "label": "LiteLLM", "unavailable": "unavailable: pip failed"},
        ],
        "points": [p.as_dict() for p in points],
    }

    md = report.render_markdown(json.loads(json.dumps(data)))

    assert "| Super Ollama | json | 16 | 2,500 | 6.00 | 9.00 | +5.60 | +8.00 | - | 0% | 0 |" in md
    assert "| LiteLLM | - | - | unavailable: pip failed |" in md
    assert "| Super Ollama | 0.80 s | 60 | - |" in md
    assert "| Super Ollama / LiteLLM, req/s | - | - | - | - |" in md
    assert "| Super Ollama / LiteLLM, req per CPU-second | - | - | - | - |" in md


def test_the_readme_section_is_replaced_between_its_markers_or_appended() -> None:
    text = f"# Bench\n\n{report.README_START}\nold\n{report.README_END}\n\nafter\n"

    replaced = report.replace_section(text, "new table\n")

    assert replaced == f"# Bench\n\n{report.README_START}\nnew table\n{report.README_END}\n\nafter\n"
    assert report.replace_section(replaced, "new table") == replaced
    appended = report.replace_section("# Bench\n", "t")
    assert appended.endswith(f"{report.README_START}\nt\n{report.README_END}\n")


def test_the_upstream_bodies_are_the_sizes_the_harness_promises() -> None:
    assert 550 <= len(upstream.chat_json_body()) <= 700
    assert json.loads(upstream.chat_json_body())["usage"]["total_tokens"] == 32
    events = upstream.chat_sse_body().split("\n\n")
    chunks = [json.loads(e.removeprefix("data: ")) for e in events if e.startswith("data: {")]
    assert len(chunks) == 21 and chunks[-1]["usage"]["completion_tokens"] == 18
    assert events[-2] == "data: [DONE]"
    assert "chat/completions" in upstream.nginx_config(Path("/tmp/x"), 1234)


def test_a_py_spy_profile_is_summed_by_leaf_package_and_our_functions() -> None:
    from sobench import profile

    raw = (
        "handle (superollama/gateway/openai_routes.py:97);forward (superollama/gateway/relay.py:43);"
        "StreamWriter._writelines (aiohttp/http_writer.py:116) 6\n"
        "handle (superollama/gateway/openai_routes.py:95);"
        "read_json (superollama/gateway/openai_routes.py:104) 2\n"
        "Runner.run (asyncio/runners.py:118) 2\n"
    )

    prof = profile.summarize_stacks(raw)

    assert prof.samples == 10
    assert prof.packages == [("aiohttp", 6), ("superollama", 2), ("event loop (uvloop, C)", 2)]
    assert prof.own[0] == ("StreamWriter._writelines (aiohttp/http_writer.py:116)", 6)
    assert dict(prof.ours)["handle (superollama/gateway/openai_routes.py)"] == 8
    assert prof.nearest == [
        ("forward (superollama/gateway/relay.py)", 6),
        ("read_json (superollama/gateway/openai_routes.py)", 2),
        (profile.NO_FRAME_OF_OURS, 2),
    ]


def test_on_and_off_variants_pair_by_name_and_compare_point_by_point() -> None:
    on = report.summarize("superollama-on", "json", 1, [run(400, 3.0, 9.0)], cpu_s=[4.0])  # 1.0 ms/req
    off = report.summarize("superollama-off", "json", 1, [run(500, 2.5, 8.0)], cpu_s=[4.0])  # 0.8 ms/req
    lone = point("superollama-on", "sse", 16, 700)

    assert report.on_off_pairs(["direct", "superollama-on", "superollama-off", "x-on"]) == [
        ("superollama-on", "superollama-off")
    ]
    rows = report.pair_rows([on, off, lone], "superollama-on", "superollama-off")

    assert len(rows) == 1  # sse c=16 has no OFF point
    r = rows[0]
    assert (r.workload, r.concurrency) == ("json", 1)
    assert r.rps_ratio == pytest.approx(0.8)
    assert r.cpu_ratio == pytest.approx(1.25) and r.cpu_ms_added == pytest.approx(0.2)
    assert (r.p50_added, r.p99_added) == (pytest.approx(0.5), pytest.approx(1.0))


def test_the_markdown_has_an_on_off_table_when_both_variants_ran() -> None:
    points = [
        report.summarize("superollama-on", "json", 16, [run(400, 3.0, 9.0)], cpu_s=[4.0]),
        report.summarize("superollama-off", "json", 16, [run(500, 2.5, 8.0)], cpu_s=[4.0]),
    ]
    data = {
        "date": "2026-01-01 00:00 UTC",
        "machine": {"nproc": 2, "cpu_model": "AMD EPYC", "python": "3.11.7"},
        "mode": "quick",
        "pinning": "-",
        "systems": [
            {"name": "superollama-on", "label": "ON", "notes": ["key sent"]},
            {"name": "superollama-off", "label": "OFF"},
        ],
        "points": [p.as_dict() for p in points],
    }

    md = report.render_markdown(data)

    assert "| ON vs OFF | load | c | req/s ratio |" in md
    assert "| | json | 16 | 0.80x | 1.25x | +0.200 | +0.50 | +1.00 |" in md
    assert "| ON | - | - | - | key sent |" in md


def test_threads_are_named_by_kind_and_the_table_has_medians_totals_and_the_floor_ratio() -> None:
    import threads

    names = {7: "MainThread", 8: "Thread-3 (_connection_worker_thread)", 9: "superollama-telemetry"}
    assert threads.label(names, 7, 7) == "main thread (event loop)"
    assert threads.label(names, 8, 7) == "registry connections (aiosqlite)"  # whatever its number
    assert threads.label(names, 9, 7) == "telemetry sinks (access log, spans)"
    assert threads.label(names, 10, 7) == "thread 10"  # py-spy did not name it

    floor = threads.Point("floor", "aiohttp floor", [6000, 7000, 6500], {"main": [150, 140, 145]})
    on = threads.Point(
        "superollama-on",
        "Super Ollama, all ON",
        [4000, 4200, 4100],
        {"main": [200, 210, 220], "log writer": [10, 0, 5]},  # idle in one round: counted as 0
    )
    assert on.median_total() == 210  # the rounds' totals 210, 210, 225
    table = threads.render({("json", 16): [floor, on]})

    assert "### json c=16" in table
    assert "| aiohttp floor | 6,500 | main | 145.0 |" in table
    assert "| aiohttp floor | 6,500 | **all threads** | **145.0** |" in table
    assert "| Super Ollama, all ON | 4,100 | main | 210.0 |" in table
    assert "| Super Ollama, all ON | 4,100 | log writer | 5.0 |" in table
    total = "| Super Ollama, all ON | 4,100 | **all threads** (0.69x the floor per CPU-second) | **210.0** |"
    assert total in table
