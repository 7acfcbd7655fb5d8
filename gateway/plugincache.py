"""Regenerate Twisted's plugin cache: ``python -m gateway.plugincache``.

Run once after installing, as the user who owns site-packages, so twistd
never needs to write ``dropin.cache`` at start-up (where it may not be
allowed to).
"""

from twisted.plugin import IPlugin, getPlugins


def main():
    names = sorted(getattr(plugin, "tapname", repr(plugin)) for plugin in getPlugins(IPlugin))
    print("twisted plugin cache regenerated; netgateway listed:", "netgateway" in names)


if __name__ == "__main__":
    main()
