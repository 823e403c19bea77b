"""The browser tests prepare their own app cache (tests/e2e/test_e2e_browser.py)."""
