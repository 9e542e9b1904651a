def pytest_configure(config) -> None:
    config.addinivalue_line("markers", "large: moves hundreds of MiB; runs by default (-m 'not large' skips)")
