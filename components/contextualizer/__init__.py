"""The MLM contextualizer (diverse context): the network and its saved form."""
