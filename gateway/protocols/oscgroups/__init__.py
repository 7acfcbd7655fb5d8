"""OSCgroups door: rendezvous server, OSC<->MIDI bridge and relay for symmetric NAT."""
