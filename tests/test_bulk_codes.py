"""`o2o-bridge codes`: a campaign's codes in bulk for flyers and platforms, as CSV or JSON
and as a printable A4 sheet of QR codes (docs/cli.md, docs/campaigns.md), on real SQLite
and PostgreSQL. Every QR on the sheet must scan back to a code the kiosks accept."""

from __future__ import annotations

import csv
import io
import json
import re
import time
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from pyzbar.pyzbar import ZBarSymbol, decode

from cloud_bridge.campaigns import CampaignService
from cloud_bridge.cli import main
from cloud_bridge.config import load_config, load_signing_key
from cloud_bridge.db import Repository
from cloud_bridge.db.campaigns import Campaigns
from cloud_bridge.sheet import PER_PAGE, pages
from o2o_protocol.codes import Code, key_id, verify_code


@pytest.fixture
def shop(tmp_path: Path, any_repo: Repository, capsys: pytest.CaptureFixture[str]) -> Path:
    """A shop made by `o2o-bridge init` on the test's database."""
    url = any_repo.engine.url.render_as_string(hide_password=False)
    argv = ["init", "--dir", str(tmp_path / "shop"), "--store", "s1", "--db", url]
    assert main([*argv, "--kiosk", "k1"]) == 0
    capsys.readouterr()
    return tmp_path / "shop" / "bridge.toml"


def _service(config_path: Path, repo: Repository) -> CampaignService:
    config = load_config(config_path)
    return CampaignService(repo, config, load_signing_key(config))


def _verifies(token: str, config_path: Path) -> Code:
    public = load_signing_key(load_config(config_path)).public_key()
    code = verify_code(token, {key_id(public): public}, store="s1", now=time.time())
    assert isinstance(code, Code), code
    return code


def _qr_codes(image: Image.Image) -> list[Any]:
    """The QR codes on an image (only those: zbar also reads stripes as linear barcodes)."""
    return list(decode(image, symbols=[ZBarSymbol.QRCODE]))


def _codes(capsys: pytest.CaptureFixture[str], config: Path, *args: str) -> tuple[int, str, str]:
    status = main(["codes", "--config", str(config), *args])
    out = capsys.readouterr()
    return status, out.out, out.err


def test_codes_as_csv_with_a_pdf_sheet(
    shop: Path, any_repo: Repository, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    campaign = _service(shop, any_repo).create(
        name="春季团购", kind="group_buy", value="双人套餐", quantity=50
    )
    sheet = tmp_path / "flyer.pdf"
    status, out, err = _codes(
        capsys, shop, "--campaign", campaign.id, "--count", "14", "--sheet", str(sheet)
    )
    assert status == 0, err
    rows = list(csv.DictReader(io.StringIO(out)))
    assert out.splitlines()[0] == "id,code,url" and len(rows) == 14
    for row in rows:
        code = _verifies(row["code"], shop)
        assert code.id == row["id"] and code.campaign == campaign.id
    recorded = Campaigns(any_repo, "s1").issued_codes(campaign.id)
    assert {r.id for r in recorded} == {r["id"] for r in rows}
    assert _service(shop, any_repo).campaign(campaign.id).issued == 14  # type: ignore[union-attr]
    # Two A4 pages: 12 codes and 2.
    pdf = sheet.read_bytes()
    assert pdf.startswith(b"%PDF")
    assert len(re.findall(rb"/Type\s*/Page(?![s\w])", pdf)) == 2
    assert "flyer.pdf (2 pages)" in err
    # The pages of that sheet: every QR scans back to its code, in order, 12 to a page.
    drawn = pages([(r["id"], r["code"]) for r in rows])
    assert len(drawn) == 2
    scanned = [sorted(d.data.decode() for d in _qr_codes(p)) for p in drawn]
    assert scanned == [
        sorted(r["code"] for r in rows[:PER_PAGE]),
        sorted(r["code"] for r in rows[PER_PAGE:]),
    ]


def test_codes_as_json_with_a_png_sheet_that_scans(
    shop: Path, any_repo: Repository, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    card = _service(shop, any_repo).create(
        name="洗车次卡",
        kind="visit_card",
        value="洗车一次",
        uses=5,
        hours=[{"days": [1, 2, 3, 4, 5], "from": "10:00", "to": "16:00"}],
    )
    sheet = tmp_path / "cards.png"
    status, out, err = _codes(
        capsys,
        shop,
        "--campaign",
        card.id,
        "--count",
        "12",
        "--member",
        "m-ada",
        "--format",
        "json",
        "--sheet",
        str(sheet),
    )
    assert status == 0, err
    codes = json.loads(out)["codes"]
    assert len(codes) == 12
    with Image.open(sheet) as image:
        assert image.size == (2480, 3508)  # A4 at 300 dpi
        scanned = [d.data.decode() for d in _qr_codes(image)]
    assert sorted(scanned) == sorted(c["code"] for c in codes)
    for token in scanned:
        assert _verifies(token, shop).campaign == card.id
    recorded = Campaigns(any_repo, "s1").issued_codes(card.id)
    assert {r.member for r in recorded} == {"m-ada"}


def test_refusals_are_one_line_and_issue_nothing(
    shop: Path, any_repo: Repository, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    service = _service(shop, any_repo)
    sale = service.create(name="秒杀", kind="flash_sale", value="1元", quantity=10)
    assert _codes(capsys, shop, "--campaign", sale.id, "--count", "8")[0] == 0
    cases = [
        (["--campaign", sale.id, "--count", "3"], "only 2 code(s) left, 3 asked for"),
        (["--campaign", "cp-00000000", "--count", "1"], "no campaign 'cp-00000000'"),
        (["--campaign", sale.id, "--count", "0"], "count: 1 to 1000"),
        (
            ["--campaign", sale.id, "--count", "2", "--sheet", str(tmp_path / "x.jpg")],
            "must end in .png or .pdf",
        ),
        (
            ["--campaign", sale.id, "--count", "13", "--sheet", str(tmp_path / "x.png")],
            "a PNG holds one page",
        ),
    ]
    for args, message in cases:
        status, out, err = _codes(capsys, shop, *args)
        assert status == 2 and out == "", args
        assert message in err and len(err.strip().splitlines()) == 1, err
    assert service.campaign(sale.id).issued == 8  # type: ignore[union-attr]
    assert len(Campaigns(any_repo, "s1").issued_codes(sale.id)) == 8
