"""Command-line tools: doctor, serve, torture, bench."""
