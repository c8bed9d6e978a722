"""pytest options for the broker tests: --broker PATH (default build/sbx-netbroker)."""
import os

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))


def pytest_addoption(parser):
    parser.addoption("--broker", default=os.environ.get(
        "SBX_NETBROKER", os.path.join(ROOT, "build", "sbx-netbroker")),
        help="the sbx-netbroker binary to test")
