//! The scope registry.

#[allow(clippy::wildcard_imports)]
use super::*;

/// The registry: names unique per tenant, listed by name (byte order),
/// deletion leaves keys' scopes alone.
pub async fn scope_registry_is_per_tenant_and_sorted_by_name(store: Arc<dyn Store>) {
    let scope = |tenant: &Tenant, name: &str| Scope {
        id: ScopeId::new(),
        tenant: tenant.clone(),
        name: name.into(),
        description: format!("the {name} scope"),
        created_at: t0(),
    };
    let names = ["read:users", "read", "Write", "admin", "read-all", "read:users:emails"];
    let mut scopes = Vec::new();
    for name in names {
        let s = scope(&acme(), name);
        store.insert_scope(&s).await.unwrap();
        scopes.push(s);
    }
    assert_already_exists(store.insert_scope(&scope(&acme(), "read")).await, "scope");
    store.insert_scope(&scope(&globex(), "read")).await.unwrap();

    let listed = store.list_scopes(&acme()).await.unwrap();
    let listed_names: Vec<&str> = listed.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(listed_names, ["Write", "admin", "read", "read-all", "read:users", "read:users:emails"]);
    let read = scopes.iter().find(|s| s.name == "read").unwrap();
    assert_eq!(listed.iter().find(|s| s.name == "read"), Some(read), "every field round-trips");

    let key = insert(&store, modified(&sample_key(&acme()), |k| k.scopes = vec!["read".into()])).await;
    store.delete_scope(&acme(), read.id).await.unwrap();
    assert_not_found(store.delete_scope(&acme(), read.id).await, "scope");
    assert_eq!(store.list_scopes(&acme()).await.unwrap().len(), names.len() - 1);
    assert_eq!(store.get_key(&acme(), key.key.id).await.unwrap().unwrap().key.scopes, ["read"]);
    store.insert_scope(&scope(&acme(), "read")).await.unwrap();
    assert_eq!(store.list_scopes(&globex()).await.unwrap().len(), 1);
}
