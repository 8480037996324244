#!/bin/sh
# The throw-away Ansible Vault password of one Molecule run (ANSIBLE_VAULT_PASSWORD_FILE points
# here; Ansible runs the file and reads the password from its output). Made on first use, kept in
# the scenario's ephemeral directory, gone with it.
set -eu
file="${MOLECULE_EPHEMERAL_DIRECTORY:?only for Molecule runs}/vault-password"
if [ ! -s "$file" ]; then
  umask 077
  python3 -c 'import secrets; print(secrets.token_urlsafe(32))' > "$file.tmp"
  mv "$file.tmp" "$file"
fi
cat "$file"
