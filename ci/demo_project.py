"""The demo project's config with its input paths made absolute, for the checks that run
segflow on the demo from a temporary directory (ci/privacy_check.py, ci/audience_check.py)."""
import os


def demo_config_text():
    """fixtures/demo/segflow.toml with absolute input URIs (run from the repository root)."""
    demo = os.path.abspath("fixtures/demo")
    with open(os.path.join(demo, "segflow.toml")) as f:
        text = f.read()
    return (
        text.replace('uri = "orders"', f'uri = "{demo}/orders"')
        .replace('uri = "customers.parquet"', f'uri = "{demo}/customers.parquet"')
        .replace('uri = "marketing_spend.parquet"', f'uri = "{demo}/marketing_spend.parquet"')
    )
