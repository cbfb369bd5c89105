# Maps the stack's addresses (BLOG_*, from .state/stack.env) to each service's own settings,
# unless they are already set. Sourced by run-services.sh and create-author.sh.
# Each PostgreSQL user connects as its own role (BLOG_<SVC>_DSN), owner of its schema only.
: "${PUBLISHER_DATABASE_URL:=${BLOG_PUBLISHER_DSN:-$BLOG_POSTGRES_DSN}}"
: "${PUBLISHER_KAFKA_BOOTSTRAP_SERVERS:=$BLOG_KAFKA_BOOTSTRAP}"
: "${COUNTER_DATABASE_URL:=${BLOG_COUNTER_DSN:-$BLOG_POSTGRES_DSN}}"
: "${COUNTER_KAFKA_BOOTSTRAP_SERVERS:=$BLOG_KAFKA_BOOTSTRAP}"
: "${INDEXER_ES_URL:=$BLOG_ES_URL}"
: "${INDEXER_KAFKA_BOOTSTRAP_SERVERS:=$BLOG_KAFKA_BOOTSTRAP}"
: "${LAGMON_KAFKA_BOOTSTRAP_SERVERS:=$BLOG_KAFKA_BOOTSTRAP}"
export LAGMON_KAFKA_BOOTSTRAP_SERVERS PUBLISHER_DATABASE_URL PUBLISHER_KAFKA_BOOTSTRAP_SERVERS COUNTER_DATABASE_URL \
  COUNTER_KAFKA_BOOTSTRAP_SERVERS INDEXER_ES_URL INDEXER_KAFKA_BOOTSTRAP_SERVERS
# KAFKA_AUTH=scram: each service logs in as its own Kafka user (the KafkaUser of its name, with
# exactly its ACLs), never as the stack's admin.
if [ -n "${BLOG_KAFKA_SASL_MECHANISM:-}" ]; then
  for _svc in PUBLISHER COUNTER INDEXER LAGMON; do
    _user="$(echo "$_svc" | tr '[:upper:]' '[:lower:]')"
    _password_var="BLOG_KAFKA_${_svc}_PASSWORD"
    for _pair in "SECURITY_PROTOCOL=$BLOG_KAFKA_SECURITY_PROTOCOL" \
      "SASL_MECHANISM=$BLOG_KAFKA_SASL_MECHANISM" "SASL_USERNAME=$_user" \
      "SASL_PASSWORD=${!_password_var:-}"; do
      _name="${_svc}_KAFKA_${_pair%%=*}"
      [ -n "${!_name:-}" ] || export "$_name=${_pair#*=}"
    done
  done
  unset _svc _user _password_var _pair _name
fi
