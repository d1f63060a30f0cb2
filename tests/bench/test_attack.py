"""benchmarks/attack.py: its frames are what they claim, its table merges columns, one row end to end."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

from uringws.ws.protocol import Message, Protocol, Side

ATTACK = Path(__file__).resolve().parents[2] / "benchmarks" / "attack.py"


@pytest.fixture(scope="module")
def attack() -> ModuleType:
    spec = importlib.util.spec_from_file_location("attack", ATTACK)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["attack"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("size", [0, 5, 125, 126, 65535, 65536, 70001])
def test_frames_decode_on_a_server(attack: ModuleType, size: int) -> None:
    payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
    proto = Protocol(Side.SERVER, max_size=None)
    proto.receive_data(attack.ws_frame(0x2, payload))
    assert proto.events_received() == [Message(payload)]


def test_markdown_merges_columns(attack: ModuleType) -> None:
    report = {"columns": {
        "websockets": {"quick": False, "results": {"silent": {"silent TCP: closed after s": 10.0}}},
        "before": {"quick": False, "results": {"silent": {"silent TCP: closed after s": ">75", "_seconds": 75}}},
        "after": {"quick": True, "results": {"silent": {"half a ClientHello: closed after s": 9.5}}},
    }}
    lines = attack.markdown(report).splitlines()
    assert lines[0] == "| attack | measure | before | after (quick) | websockets | target |"
    rows = {line.split(" | ")[1]: line.split(" | ")[2:5] for line in lines[2:] if line.startswith("| ")}
    assert rows == {"silent TCP: closed after s": [">75", "-", "10"],
                    "half a ClientHello: closed after s": ["-", "9.5", "-"]}


def test_doc_table_block_is_replaced(attack: ModuleType, tmp_path: Path) -> None:
    doc = tmp_path / "a.md"
    doc.write_text("intro\n<!-- table x.json -->\nold\n<!-- end table -->\n<!-- table y.json -->\nkeep\n"
                   "<!-- end table -->\n")
    assert attack.splice(doc, "x.json", "new\n")
    assert doc.read_text() == ("intro\n<!-- table x.json -->\nnew\n<!-- end table -->\n<!-- table y.json -->\n"
                               "keep\n<!-- end table -->\n")
    assert not attack.splice(doc, "z.json", "new\n")


def test_malformed_row_against_websockets(attack: ModuleType, tmp_path: Path) -> None:
    """The reference server's answers, as the harness reads them (about 10 s)."""
    pytest.importorskip("websockets")
    pytest.importorskip("trustme")
    out = tmp_path / "r.json"
    assert attack.main(["--rows", "malformed", "--json", str(out)]) == 0
    got = json.loads(out.read_text())["columns"]["websockets"]["results"]["malformed"]
    assert got["unmasked frame"] == got["opcode 0x3"] == got["ping of 126 bytes"] == "1002"
    assert got["text not UTF-8"] == "1007"
    assert got["100 KB head in one write"].startswith("HTTP/1.1 431")
    assert got["after RST mid-receive and mid-send: server alive"] == "yes"
    assert got["canary timeouts (>5 s) / errors"] == "0 / 0"
    assert got["canary p50 ms"] is not None
