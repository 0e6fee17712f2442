"""Browser tests: Debian's headless Chromium against a real `dispatcher serve`."""
