"""pytest plugin: fixtures for running the gateway and fake providers in tests."""
