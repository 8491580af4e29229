#!/usr/bin/env bash
# Vendor the Socket.IO browser client into web_client/vendor/ (served as /static/vendor/): the
# pages import it as an ES module, with no build step. Pinned: socket.io-client 4.x speaks
# Engine.IO v4, the protocol of python-socketio 5.
#
# Refresh: change VERSION (and ESM_SHA256 to the new file's hash, or empty it for one run to
# print it), run `bash scripts/vendor_socketio.sh`, review and commit web_client/vendor/.
# Needs npm (Debian package npm) and the npm registry.
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGE=socket.io-client
VERSION=4.8.4
# SHA-256 of package/dist/socket.io.esm.min.js of that version; the script refuses any other.
ESM_SHA256=771c3872e7d9bf81020615fda67ef0fd2aa61fcaf1990100714a46fa2c39f8a1
DEST=web_client/vendor

command -v npm >/dev/null || { echo "probelink: npm is needed (apt-get install npm)" >&2; exit 1; }

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
# npm checks the tarball against the registry's integrity hash.
tarball="$(cd "$work" && npm pack --silent "$PACKAGE@$VERSION")"
tar -xzf "$work/$tarball" -C "$work"

esm="$work/package/dist/socket.io.esm.min.js"
[ -f "$esm" ] || { echo "probelink: $PACKAGE@$VERSION has no dist/socket.io.esm.min.js" >&2; exit 1; }
sha="$(sha256sum "$esm" | cut -d' ' -f1)"
if [ -n "$ESM_SHA256" ] && [ "$sha" != "$ESM_SHA256" ]; then
  echo "probelink: $PACKAGE@$VERSION socket.io.esm.min.js has SHA-256 $sha, expected $ESM_SHA256" >&2
  exit 1
fi
# The pages do `import { io } from "/static/vendor/socket.io.esm.min.js"`.
grep -Eq 'export *\{[^}]*\bas io\b|export *\{[^}]*\bio\b' "$esm" || {
  echo "probelink: $PACKAGE@$VERSION socket.io.esm.min.js does not export io" >&2
  exit 1
}

mkdir -p "$DEST"
rm -f "$DEST/socket.io.esm.min.js" "$DEST/socket.io.esm.min.js.map" "$DEST/LICENSE"
cp "$esm" "$DEST/socket.io.esm.min.js"
[ -f "$esm.map" ] && cp "$esm.map" "$DEST/socket.io.esm.min.js.map"
cp "$work/package/LICENSE" "$DEST/LICENSE"

cat >"$DEST/README.md" <<EOF
# Vendored browser libraries

Do not edit these files by hand: \`bash scripts/vendor_socketio.sh\` writes them.

| file | package | version | licence | SHA-256 |
| --- | --- | --- | --- | --- |
| \`socket.io.esm.min.js\` | [$PACKAGE](https://www.npmjs.com/package/$PACKAGE) (\`dist/socket.io.esm.min.js\`) | $VERSION | MIT (\`LICENSE\`) | \`$sha\` |

The Socket.IO browser client as an ES module: pages do
\`import { io } from "/static/vendor/socket.io.esm.min.js";\`. Version 4.x speaks Engine.IO v4,
the protocol of python-socketio 5 on the server.

To refresh it, change \`VERSION\` and \`ESM_SHA256\` in \`scripts/vendor_socketio.sh\` and run
\`bash scripts/vendor_socketio.sh\` (it needs \`npm\` and the npm registry); it downloads the
package with \`npm pack\` (integrity checked against the registry), refuses a file whose
SHA-256 differs from \`ESM_SHA256\`, and rewrites this directory.
EOF
echo "probelink: vendored $PACKAGE@$VERSION into $DEST (socket.io.esm.min.js SHA-256 $sha)" >&2
