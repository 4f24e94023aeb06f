"""The admin chart is drawn on the server: an SVG with the RTT line and loss points."""

from datetime import UTC, datetime, timedelta

import pytest

from relays.charts import rtt_loss_svg

pytestmark = pytest.mark.smoke
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def test_rtt_line_loss_points_and_failed_probes():
    points = [(T0 + timedelta(seconds=15 * i), 1.0 + i, 0.1 if i == 2 else 0.0) for i in range(4)]
    points.append((T0 + timedelta(seconds=60), None, None))  # a failed probe
    svg = rtt_loss_svg(points, title="r <1>")
    assert svg.startswith("<svg") and svg.endswith("</svg>")
    assert svg.count("<polyline") == 1 and svg.count("<circle") == 4
    assert 'aria-label="r &lt;1&gt;"' in svg  # the title is escaped


def test_the_line_breaks_where_probes_are_missing():
    points = [(T0 + timedelta(seconds=15 * i), 2.0, 0.0) for i in range(3)]
    points += [(T0 + timedelta(hours=1, seconds=15 * i), 2.0, 0.0) for i in range(3)]
    assert rtt_loss_svg(points, title="r", max_gap_s=45).count("<polyline") == 2


def test_too_few_points_say_so():
    assert "Not enough probes" in rtt_loss_svg([(T0, 1.0, 0.0)], title="r")
