pytest_plugins = ["pythoncoder.testing.conformance_plugin"]
