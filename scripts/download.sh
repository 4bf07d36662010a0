# Sourced by scripts/fetch_jars.sh and scripts/fetch_debs.sh.
# download URL SHA256 FILE PINNED_IN: fetch URL (three tries) into a temporary file beside FILE, check
# it against SHA256, then move it into place; exits 1 naming PINNED_IN when the bytes do not match.
download() {
  local url=$1 sum=$2 file=$3 pinned=$4 tmp
  tmp=$(mktemp "$(dirname "$file")/.fetch-XXXXXX")
  for attempt in 1 2 3; do
    if curl -fsSL --retry 2 -o "$tmp" "$url"; then break; fi
    [ "$attempt" = 3 ] && { rm -f "$tmp"; echo "[setup] ERROR: could not fetch $url" >&2; exit 1; }
    sleep 2
  done
  if ! echo "$sum  $tmp" | sha256sum -c --status; then
    rm -f "$tmp"; echo "[setup] ERROR: $(basename "$file") does not match its pinned SHA-256 ($pinned)" >&2; exit 1
  fi
  chmod 644 "$tmp" && mv "$tmp" "$file"
}
