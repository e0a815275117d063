//! Which of the node's pods opt in, and under which label.

use k8s_openapi::api::core::v1::Pod;

use super::layout::{Qos, valid_uid};

/// The annotation by which a pod asks to be governed under a label.
pub const ANNOTATION: &str = "actgate.dev/label";

/// A pod that asked for a label, and whose UID and label are usable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OptIn {
    /// `namespace/name`, for messages.
    pub pod: String,
    pub uid: String,
    pub qos: Option<Qos>,
    pub label: String,
}

/// An annotated pod that can't be bound, and why (said once per pod by the caller).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refused {
    pub pod: String,
    pub uid: String,
    pub why: String,
}

/// The pods of `list` that carry the annotation: those that can be bound, and those that
/// can't. `label_problem` says why a label name is invalid (the policies' own rule).
pub fn opt_ins(
    pods: impl IntoIterator<Item = Pod>,
    label_problem: impl Fn(&str) -> Option<String>,
) -> (Vec<OptIn>, Vec<Refused>) {
    let (mut ok, mut refused) = (Vec::new(), Vec::new());
    for p in pods {
        let meta = p.metadata;
        let Some(label) = meta.annotations.as_ref().and_then(|a| a.get(ANNOTATION)) else {
            continue;
        };
        let pod = format!(
            "{}/{}",
            meta.namespace.as_deref().unwrap_or_default(),
            meta.name.as_deref().unwrap_or_default()
        );
        let uid = meta.uid.clone().unwrap_or_default();
        let why = if !valid_uid(&uid) {
            Some(format!("its UID {uid:?} is not a UUID"))
        } else {
            label_problem(label).map(|problem| {
                format!(
                    "its annotation {ANNOTATION}: {label:?} is not a valid label name: {problem}"
                )
            })
        };
        match why {
            Some(why) => refused.push(Refused { pod, uid, why }),
            None => ok.push(OptIn {
                pod,
                uid,
                qos: p
                    .status
                    .and_then(|s| s.qos_class)
                    .and_then(|q| Qos::parse(&q)),
                label: label.clone(),
            }),
        }
    }
    (ok, refused)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The items of a PodList as the API server writes it.
    fn list(json: &str) -> Vec<Pod> {
        let list: serde_json::Value = serde_json::from_str(json).expect("JSON");
        serde_json::from_value(list["items"].clone()).expect("the items of a PodList")
    }

    fn no_dots(label: &str) -> Option<String> {
        label.contains('/').then(|| "no slashes".to_string())
    }

    #[test]
    fn only_annotated_pods_with_a_valid_label_and_uid_opt_in() {
        let pods = list(
            r#"{"kind":"PodList","apiVersion":"v1","metadata":{"resourceVersion":"7"},"items":[
              {"metadata":{"name":"a","namespace":"ns","uid":"11111111-2222-3333-4444-555555555555",
                "annotations":{"actgate.dev/label":"coding-agent","other":"x"}},
               "spec":{"nodeName":"n1"},"status":{"phase":"Running","qosClass":"Burstable"}},
              {"metadata":{"name":"b","namespace":"ns","uid":"21111111-2222-3333-4444-555555555555"},
               "status":{"qosClass":"BestEffort"}},
              {"metadata":{"name":"c","namespace":"ns","uid":"31111111-2222-3333-4444-555555555555",
                "annotations":{"actgate.dev/label":"../x"}}},
              {"metadata":{"name":"d","namespace":"ns","uid":"../../etc",
                "annotations":{"actgate.dev/label":"ok"}}},
              {"metadata":{"name":"e","namespace":"kube-system","uid":"51111111-2222-3333-4444-555555555555",
                "annotations":{"actgate.dev/label":"research"}}}
            ]}"#,
        );
        let (ok, refused) = opt_ins(pods, no_dots);
        assert_eq!(
            ok,
            vec![
                OptIn {
                    pod: "ns/a".into(),
                    uid: "11111111-2222-3333-4444-555555555555".into(),
                    qos: Some(Qos::Burstable),
                    label: "coding-agent".into(),
                },
                OptIn {
                    pod: "kube-system/e".into(),
                    uid: "51111111-2222-3333-4444-555555555555".into(),
                    qos: None,
                    label: "research".into(),
                },
            ]
        );
        assert_eq!(refused.len(), 2);
        assert!(
            refused[0]
                .why
                .contains("not a valid label name: no slashes")
        );
        assert!(refused[1].why.contains("not a UUID"));
    }

    #[test]
    fn an_empty_list_has_no_opt_ins() {
        let (ok, refused) = opt_ins(list(r#"{"kind":"PodList","items":[]}"#), no_dots);
        assert!(ok.is_empty() && refused.is_empty());
    }
}
