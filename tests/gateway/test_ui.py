"""The dashboard's routes without a browser: the page, its assets, /ui/data and the counts history."""

from __future__ import annotations

import pytest

from producer.gateway import create_app
from producer.gateway.history import CountsHistory
from tests.gateway.gwfakes import TOKEN, FakePool, call


def test_without_any_token_configured_the_dashboard_is_served_as_every_route_is() -> None:
    app = create_app(FakePool(pools=("pool-a",)))
    page = call(app, "GET", "/ui")
    assert page.status_code == 200 and '<script src="/ui/static/dashboard.js">' in page.text
    assert "script-src 'self'" in page.headers["content-security-policy"]  # no inline script, nothing foreign
    (pool,) = call(app, "GET", "/ui/data").json()["pools"]
    assert pool["pool"] == "pool-a" and pool["status"]["counts"]["idle"] == 2
    assert [set(s) for s in pool["history"]] == [{"t", "idle", "assigned", "pending", "waiting"}]


def test_with_a_token_the_page_is_a_login_form_and_the_data_is_refused() -> None:
    app = create_app(FakePool(), token=TOKEN)
    form = call(app, "GET", "/ui")
    assert form.status_code == 401 and "<form" in form.text and "counts" not in form.text
    assert call(app, "GET", "/ui/data").status_code == 401
    assert call(app, "GET", "/ui/data", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200


@pytest.mark.parametrize("name", ["dashboard.js", "dashboard.css"])
def test_the_assets_come_from_the_package_and_need_no_token(name: str) -> None:
    answer = call(create_app(FakePool(), token=TOKEN), "GET", f"/ui/static/{name}")
    assert answer.status_code == 200 and len(answer.text) > 500
    assert "http://" not in answer.text.replace("http://www.w3.org/2000/svg", "")  # no CDN, nothing remote


@pytest.mark.parametrize("name", ["login.html", "..%2Fui.py", "nothing.js"])
def test_no_other_file_is_served(name: str) -> None:
    assert call(create_app(FakePool()), "GET", f"/ui/static/{name}").status_code == 404


def test_the_history_keeps_one_sample_per_interval_for_an_hour() -> None:
    history = CountsHistory(sample_s=5.0, keep_s=3600.0)
    status = {"counts": {"idle": 2, "assigned": 1, "pending": 0}, "waiting": [{"project_id": "w"}]}
    for t in range(0, 4000, 1):  # a dashboard polling every second for over an hour
        history.record(status, now=float(t))
    samples = history.last_hour(now=4000.0)
    assert len(samples) == 720 and samples[0]["t"] >= 400.0
    assert samples[-1] == {"t": 3995.0, "idle": 2, "assigned": 1, "pending": 0, "waiting": 1}


def test_the_dashboard_data_has_every_pool_and_says_which_did_not_answer() -> None:
    from tasks.errors import PoolUnavailable

    pool = FakePool(pools=("alpha", "beta"))
    status = pool.status

    async def beta_down(*, pool: str | None = None) -> dict[str, object]:
        if pool == "beta":
            raise PoolUnavailable("no pool worker answered")
        return await status(pool=pool)

    pool.status = beta_down  # type: ignore[method-assign]
    body = call(create_app(pool), "GET", "/ui/data").json()
    alpha, beta = body["pools"]
    assert alpha["pool"] == "alpha" and alpha["status"]["counts"]["idle"] == 2 and len(alpha["history"]) == 1
    assert beta["pool"] == "beta" and beta["status"] is None and "answer" in beta["error"]
