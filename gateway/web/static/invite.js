// Invite links: the page's address with what fills the join form in its fragment
// (#session=demo&passphrase=...). Browsers never send the fragment to the server, so a
// passphrase in it reaches only whoever the link is given to.

/**
 * The invite link for ``pageUrl``: ``session``, the ``server`` when it is not the page's own
 * gateway (``defaultServer``), and the ``passphrase`` only when the player chose to include it.
 */
export function inviteLink(pageUrl, { server, defaultServer, session, passphrase = null }) {
  const url = new URL(pageUrl);
  url.search = '';
  const fields = new URLSearchParams();
  if (server && server !== defaultServer) fields.set('server', server);
  fields.set('session', session);
  if (passphrase) fields.set('passphrase', passphrase);
  url.hash = fields.toString();
  return url.href;
}

/** The join fields an invite link's fragment (``location.hash``) carries; {} when none. */
export function readInvite(hash) {
  const fields = new URLSearchParams(hash.replace(/^#/, ''));
  const invite = {};
  for (const key of ['server', 'session', 'passphrase']) {
    const value = fields.get(key);
    if (value) invite[key] = value;
  }
  return invite;
}
