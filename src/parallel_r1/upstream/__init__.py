"""Third-party code kept verbatim, each file with its source, commit and licence."""
