mod proto {
    pub mod deviceplugin {
        tonic::include_proto!("v1beta1");
    }
    pub mod podresources {
        tonic::include_proto!("v1");
    }
}
fn main() {
    let _ = proto::deviceplugin::Empty {};
}
